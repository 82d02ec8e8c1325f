# Unit tests of src/config/: ag_unit_test(name source.c ...)
