"""The e-mail channel: one plain-text message per alert over SMTP (smtplib), with a bounded timeout."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from opdwatch.alerts.channels import DeliveryError
from opdwatch.alerts.message import AlertMessage
from opdwatch.alerts.settings import EmailSettings


class EmailChannel:
    name = "email"

    def __init__(self, settings: EmailSettings, *, user: str = "", password: str = "") -> None:
        self.settings, self.min_level = settings, settings.min_level
        self._user, self._password = user, password

    def send(self, msg: AlertMessage, timeout: float) -> str:
        s = self.settings
        mail = EmailMessage()
        mail["Subject"] = f"[opdwatch {msg.level}] {msg.title}"
        mail["From"] = s.sender
        mail["To"] = ", ".join(s.recipients)
        mail.set_content(msg.text())
        smtp_class = smtplib.SMTP_SSL if s.ssl else smtplib.SMTP
        try:
            with smtp_class(s.host, s.port, timeout=timeout) as smtp:
                if s.starttls:
                    smtp.starttls()
                if self._user:
                    smtp.login(self._user, self._password)
                refused = smtp.send_message(mail)
        except TimeoutError:
            raise DeliveryError(f"timed out after {timeout:g}s talking to {s.host}:{s.port}") from None
        except (smtplib.SMTPException, OSError) as exc:
            text = f"SMTP {s.host}:{s.port}: {type(exc).__name__}: {exc}"
            raise DeliveryError(text.replace(self._password, "<redacted>") if self._password else text) from None
        if refused:
            raise DeliveryError(f"SMTP {s.host}:{s.port} refused {', '.join(sorted(refused))}")
        return f"sent to {len(s.recipients)} recipient(s) via {s.host}:{s.port}"
