"""The Docker side: the engine client, image builds, base images and the package cache."""
