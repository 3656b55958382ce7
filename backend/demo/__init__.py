"""Demo data: a simulated fleet of AI agents (`backend.demo.fleet`) that pushes realistic logs."""
