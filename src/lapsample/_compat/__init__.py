"""BlackJAX-compatible names (`laplace_hmc`, `run_inference_algorithm`, ...), as
Optimistix keeps scipy's API in `optimistix.compat`: translations onto lapsample's
own components, not a second engine."""
