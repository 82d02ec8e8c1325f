# Sources of src/obs/ (added to aoai_core).
