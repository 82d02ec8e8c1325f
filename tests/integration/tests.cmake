# Integration tests: python3 scripts that start build/aoai-guard against the stand-ins.
