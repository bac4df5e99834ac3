"""opdwatch on other trainers, live: ``opdwatch.integrations.trl.attach`` (extra ``opdwatch[trl]``).

Nothing is imported here, so ``import opdwatch.integrations`` needs neither torch nor TRL. docs/integrations.md.
"""
