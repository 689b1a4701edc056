"""What is known of a target: a baseline's definition, its base image, record layouts, CPU bring-up code."""
