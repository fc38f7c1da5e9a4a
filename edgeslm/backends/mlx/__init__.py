"""MLX (Apple silicon) format: mlx-lm conversion on the build side, mlx-lm generation on the device."""
