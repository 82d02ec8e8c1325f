# Unit tests of src/limit/: ag_unit_test(name source.c ...)
