# Unit tests of src/auth/: ag_unit_test(name source.c ...)
