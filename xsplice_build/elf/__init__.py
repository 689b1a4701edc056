"""ELF: every byte layout of this project lives here (structs), with the model, reader and writer."""
