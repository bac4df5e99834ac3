"""The training loop: train(), one OPD step in phases, the controller, the watch, validation, checkpoints."""
