# petrel itself as a Nomad service: stateless, so any number of replicas can run behind a load balancer.
# Secrets (tokens) come from Nomad Variables at nomad/jobs/petrel (see hcl/README.md).
# Build history outlives Nomad's garbage collection in the archive, a host volume "petrel-archive" that every
# client running petrel declares (hcl/README.md); point it at one shared filesystem when replicas run on
# several clients, so each of them serves every archived build.
# Every replica answers webhooks and reads; one leader, elected with a lock on the Nomad variable
# PETREL_LEADER_PATH (default petrel/leader), posts statuses from the event stream and archives. NOMAD_TOKEN's
# policy needs `variables { path "petrel/leader" { capabilities = ["write", "read"] } }` besides its job
# permissions (README "Several replicas"); a replica whose token lacks it serves but never leads.

variable "image" {
  description = "The petrel image (builders/executor/Dockerfile also runs `petrel serve`); override with -var image=..."
  type        = string
  default     = "petrel-executor:latest"
}

job "petrel" {
  type        = "service"
  datacenters = ["*"]

  group "petrel" {
    count = 2

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "petrel"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    volume "petrel-archive" {
      type   = "host"
      source = "petrel-archive"
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      auto_revert      = true
    }

    task "petrel" {
      driver = "docker"

      config {
        image   = var.image
        command = "petrel"
        args    = ["serve"]
        ports   = ["http"]
      }

      volume_mount {
        volume      = "petrel-archive"
        destination = "/var/lib/petrel/archive"
      }

      env {
        PETREL_LISTEN      = "0.0.0.0:8080"
        PETREL_BUILDER_JOB = "builder"
        PETREL_ARCHIVE_DIR = "/var/lib/petrel/archive"
        NOMAD_ADDR         = "http://${attr.unique.network.ip-address}:4646"
        CONSUL_HTTP_ADDR   = "http://${attr.unique.network.ip-address}:8500"
        LOG_LEVEL          = "info"
      }

      # PETREL_URL, PETREL_ADMIN_TOKEN, NOMAD_TOKEN and CONSUL_HTTP_TOKEN, kept out of the job spec.
      template {
        destination = "${NOMAD_SECRETS_DIR}/petrel.env"
        env         = true
        data        = <<EOT
{{ with nomadVar "nomad/jobs/petrel" }}
PETREL_URL={{ .PETREL_URL }}
PETREL_ADMIN_TOKEN={{ .PETREL_ADMIN_TOKEN }}
NOMAD_TOKEN={{ .NOMAD_TOKEN }}
CONSUL_HTTP_TOKEN={{ .CONSUL_HTTP_TOKEN }}
{{ end }}
EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
