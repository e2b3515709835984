"""Dataset adapters (public layouts -> MONAI datalists), study discovery, synthetic data."""
