# Nomad dev agent configuration for docker-compose.yml: the Docker driver may run the privileged executor,
# and builds keep their caches on a host volume. Paths are the same inside and outside the container, so the
# bind mounts Nomad hands to the host's Docker daemon point at real host directories.
data_dir = "/tmp/petrel-compose/nomad"

client {
  host_volume "petrel-cache" {
    path      = "/tmp/petrel-compose/cache"
    read_only = false
  }
}

plugin "docker" {
  config {
    allow_privileged = true
    volumes {
      enabled = true
    }
  }
}
