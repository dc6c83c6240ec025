# petrel builder (Docker driver): one dispatched instance of this job per build.
# Register:  petrel builder register hcl/builder.nomad.hcl   (or: nomad job run hcl/builder.nomad.hcl)
# Needs on every client: the Docker plugin with allow_privileged = true, and a host volume "petrel-cache"
# (see hcl/README.md).

variable "image" {
  description = "The executor image (builders/executor/Dockerfile); override with -var image=..."
  type        = string
  default     = "petrel-executor:latest"
}

job "builder" {
  type        = "batch"
  datacenters = ["*"]

  parameterized {
    # Present only for trusted builds: {"secrets": {...}, "deploy_key": "..."}.
    payload       = "optional"
    meta_required = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"]
    meta_optional = ["REPO", "EVENT", "PR", "TAG", "TRUSTED", "PRIVATE", "CACHES"]
  }

  group "runner" {
    # Exactly one run per dispatch: a failed build is reported, never silently retried.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    volume "petrel-cache" {
      type   = "host"
      source = "petrel-cache"
    }

    task "executor" {
      driver = "docker"

      # Nomad sends SIGTERM first; the executor stops the build's process group and cleans up
      # within PETREL_KILL_GRACE (10s), well inside this timeout.
      kill_signal  = "SIGTERM"
      kill_timeout = "20s"

      dispatch_payload {
        file = "payload.json"
      }

      volume_mount {
        volume      = "petrel-cache"
        destination = "/var/cache/petrel"
      }

      env {
        PETREL_CACHE_DIR = "/var/cache/petrel"
      }

      config {
        image   = var.image
        command = "petrel"
        args    = ["executor"]

        # overlayfs and bind mounts inside the build's private mount namespace need CAP_SYS_ADMIN.
        privileged = true

        # A real init as PID 1 reaps the processes builds leave behind.
        init = true
      }

      resources {
        cpu    = 2000
        memory = 4096
      }
    }
  }
}
