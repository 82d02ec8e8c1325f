# Unit tests of src/audit/: ag_unit_test(name source.c ...)
