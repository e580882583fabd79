"""Host-side result containers (NumPy, ArviZ, pandas, matplotlib): nothing here
is traced."""
