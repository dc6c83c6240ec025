# petrel builder (raw_exec driver), for `nomad agent -dev` hosts without Docker: the same contract as
# builder.nomad.hcl, running `petrel executor` installed on the client host (npm install -g, see hcl/README.md).
#
# raw_exec is for single-tenant, trusted setups only (your own repositories, no fork pull requests, nobody
# else's code): builds run as the agent's user directly on the host, can read the host's files, and see the
# alloc directories (payloads, secrets) of other builds on the same client. Use builder.nomad.hcl (Docker) or
# builder-exec.nomad.hcl (exec: chroot, cgroups, own PID namespace) for anything else.
#
# The executor is wrapped in its own PID namespace (`unshare --pid --fork --mount-proc`), so builds on one
# client cannot see or signal each other's processes (/proc/<pid>/root, environ) and everything a build
# started ends with it; SIGTERM from Nomad is forwarded to the executor, which stops the build gracefully.
# This needs the agent to run as root (sudo nomad agent -dev); the executor then mounts an overlay.

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
        # unshare (util-linux) ignores SIGTERM while it waits: the shell forwards Nomad's kill_signal to the
        # namespace's init, the executor. --kill-child ends the namespace if unshare itself is killed.
        command = "/bin/sh"
        args = [
          "-c",
          "unshare --pid --fork --mount-proc --kill-child -- \"$@\" & u=$!; trap 'pkill -TERM -P $u' TERM INT; wait $u; wait $u",
          "petrel-builder",
          "petrel",
          "executor",
        ]
      }

      resources {
        cpu    = 2000
        memory = 4096
      }
    }
  }
}
