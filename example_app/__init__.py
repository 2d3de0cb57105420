"""The example application: players whose free-text ``team`` becomes a ``teams`` table."""
