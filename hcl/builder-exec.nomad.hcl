# petrel builder (exec driver), for clients without Docker that still run builds of several repositories or
# from forks: the same contract as builder.nomad.hcl, with `petrel executor` installed on the client host
# (npm install -g, see hcl/README.md). The exec driver runs the task in a chroot of the host's system
# directories, in its own cgroup and its own PID namespace: a build sees neither other builds' processes
# nor the Nomad client's, and everything it started ends with the task.
# Needs on every client (see hcl/README.md): root may run exec tasks (client option user.denylist),
# sys_admin in the exec plugin's allow_caps, and the host volume "petrel-cache".

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
      driver = "exec"
      # exec tasks run as nobody by default; the executor needs root inside its chroot to mount the
      # overlay, and drops CAP_SYS_ADMIN (and more) before the build script starts (docs/executor.md).
      user = "root"

      # Nomad sends SIGTERM first; the executor stops the build and cleans up within PETREL_KILL_GRACE (10s),
      # well inside this timeout. What is left then dies with the task's PID namespace.
      kill_signal  = "SIGTERM"
      kill_timeout = "20s"

      # Written to the task's local/ directory; the executor reads it, then deletes it before the build.
      dispatch_payload {
        file = "payload.json"
      }

      volume_mount {
        volume      = "petrel-cache"
        destination = "/var/cache/petrel"
      }

      env {
        PETREL_CACHE_DIR = "/var/cache/petrel"
        # Fail closed: never fall back to a copy without mounts (which would expose the cache root).
        PETREL_ISOLATION = "mount"
      }

      config {
        command = "petrel"
        args    = ["executor"]

        # Its own PID and IPC namespaces whatever the plugin's defaults say.
        pid_mode = "private"
        ipc_mode = "private"

        # overlayfs and bind mounts inside the build's private mount namespace need CAP_SYS_ADMIN.
        cap_add = ["sys_admin"]
      }

      resources {
        cpu    = 2000
        memory = 4096
      }
    }
  }
}
