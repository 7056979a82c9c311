"""cuDNN release tooling: fetch and cache a release, run a sweep in an environment on it, check releases
against each other (`check`) and bisect a change between two of them (`bisect`)."""
