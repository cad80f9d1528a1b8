"""
Configuration: HOCON files, environment variables and command-line options
turned into frozen, validated settings objects.

Precedence per setting is prometheus-proxy's: command-line option > environment
variable > config file (including C{-Dkey=value} overrides) > built-in default.
Everything is read and checked once, before the reactor runs; nothing here is
consulted on the scrape path.

One module per job, each importing only those before it:

  - L{settings}: the frozen settings types the rest of the program uses,
    and L{settings.ConfigError}. Pure types: importing them
    loads no parser, so the many modules that only take a settings object
    import this one alone.
  - L{schema}: what a key is (L{schema.Setting}, L{schema.Role}) and the
    rules its values must meet.
  - L{compat}: the keys prometheus-proxy reads that promtwist accepts
    without acting on them, one row each.
  - L{keys}: the table of known keys per process (L{keys.PROXY},
    L{keys.AGENT}): promtwist's own keys plus the compatibility rows. It
    drives reading, the environment, C{-D}, the command-line options
    (L{promtwist.cli}) and their help.
  - L{sources}: reading a file or URL as HOCON, JSON or Java properties.
  - L{resolve}: one value per key from the first source that sets it,
    converted and checked.
  - L{records}: the list-valued keys (paths, identities, filters,
    networks, proxy endpoints), entry by entry.
  - L{load}: the two loaders that put it all together.

This package imports nothing itself, so that C{promtwist.config.settings}
stays cheap to import.
"""
