# Unit tests of src/server/: ag_unit_test(name source.c ...)
