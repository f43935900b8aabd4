"""Model families: one file each (vae.py, ...), with the config, the modules and the factory together."""
