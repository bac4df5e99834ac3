"""Which ``Host`` header values the dashboard answers (no dash import: the CLI checks options with it).

    allowed_hosts("127.0.0.1", ["dash.example.org"])   # {"localhost", "127.0.0.1", "[::1]", "dash.example.org"}
    host_name("LOCALHOST.:8050")                        # "localhost"  (None when not a host[:port])
    is_loopback("0.0.0.0")                              # False: the CLI warns

A page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) makes the browser
talk to the local dashboard as "its own" origin; the one thing such requests cannot fake is the Host
header, which still says ``evil.example``. So only the names the dashboard is meant to be reached by are
answered; the port is not compared (it says nothing about who resolved the name).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARDS = ("", "0.0.0.0", "::", "[::]")  # bind addresses that are no name a browser would send
_HOST = re.compile(r"(?P<name>[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


def host_name(value: str | None) -> str | None:
    """The host part of a ``Host`` header or an option value (lower case, IPv6 in brackets, a trailing dot
    dropped), or None when it is not ``name[:port]``, ``[v6][:port]`` or a bare IPv6 address."""
    if not value:
        return None
    text = value.strip().lower()
    if ":" in text and not text.startswith("["):
        try:  # a bare IPv6 address, as --host / --allow-host may give it
            return f"[{ipaddress.IPv6Address(text)}]"
        except ValueError:
            pass
    m = _HOST.fullmatch(text)
    if m is None or (m["port"] is not None and not 0 < int(m["port"]) < 65536):
        return None
    name = m["name"]
    if name.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1])}]"  # one spelling per address: [::1] == [0:0::1]
        except ValueError:
            return None
    name = name[:-1] if name.endswith(".") else name
    return name or None


def allowed_hosts(bind_host: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The loopback names, ``bind_host`` when it names one interface (not 0.0.0.0 / ::), and ``extra``
    (the --allow-host values, e.g. a reverse proxy's public name). Raises ValueError on a bad value."""
    names = set(DEFAULT_HOSTS)
    values = [*([bind_host] if bind_host and bind_host.strip() not in WILDCARDS else []), *extra]
    for value in values:
        name = host_name(value)
        if name is None:
            raise ValueError(f"{value!r} is not a host name or IP address")
        names.add(name)
    return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine (a loopback address or localhost).
    Any other name may resolve to a public interface, so it counts as not loopback."""
    name = host_name(host) if host.strip() not in WILDCARDS else None
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["DEFAULT_HOSTS", "allowed_hosts", "host_name", "is_loopback"]
