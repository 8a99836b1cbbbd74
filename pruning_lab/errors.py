"""One exception type for every problem the user can fix by changing the config or the inputs."""


class ConfigError(ValueError):
    """Bad input: the message names the offending key or file and what to do instead."""
