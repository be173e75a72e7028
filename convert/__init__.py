"""Off-device model work: shelf synthesis, training, int8 conversion, evaluation, bundling and signing."""
