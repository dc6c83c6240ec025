# petrel builder (raw_exec driver), for `nomad agent -dev` hosts without Docker: the same contract as
# builder.nomad.hcl, running `petrel executor` installed on the client host (npm install -g, see hcl/README.md).
# raw_exec runs as the Nomad agent's user; as root the executor mounts an overlay, otherwise it uses a user
# namespace or, failing that, a copy of the worktree.

job "builder" {
  type        = "batch"
  datacenters = ["*"]

  parameterized {
    payload       = "optional"
    meta_required = ["REPO_URL", "COMMIT", "BRANCH", "FLAVOR"]
    meta_optional = ["REPO", "EVENT", "PR", "TAG", "TRUSTED", "PRIVATE", "CACHES"]
  }

  group "runner" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "executor" {
      driver       = "raw_exec"
      # raw_exec's default is SIGINT; the executor treats both alike, SIGTERM keeps the two builders the same.
      kill_signal  = "SIGTERM"
      kill_timeout = "20s"

      dispatch_payload {
        file = "payload.json"
      }

      # raw_exec has no volume mounts: the cache lives directly on the host, and must be writable by the
      # agent's user.
      env {
        PETREL_CACHE_DIR = "/var/cache/petrel"
      }

      config {
        command = "petrel"
        args    = ["executor"]
      }

      resources {
        cpu    = 2000
        memory = 4096
      }
    }
  }
}
