# Sources of src/limit/ (added to aoai_core).
