"""Data files: the HDF5 schema (hdf5.py), readers for user inputs and reference-data generators."""
