# A Nomad periodic batch job per database: prohibit_overlap keeps runs of one target
# apart, pgvault's lease on the remote covers a rescheduled allocation elsewhere. The
# password and the S3 keys come from Nomad Variables through a template, as environment.
job "pgvault-acme" {
  type = "batch"

  periodic {
    crons            = ["0 2 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "backup" {
    count = 1

    restart {
      attempts = 1
      delay    = "5m"
      mode     = "fail"
    }

    reschedule {
      attempts  = 1
      interval  = "6h"
      unlimited = false
    }

    task "pgvault" {
      driver = "docker"

      config {
        image = "registry.example.com/pgvault:0.2.0"
        args  = ["backup", "target=acme", "quiet=true", "dir=/local/backups",
                 "remote.url=s3://crm-backups/acme", "remote.endpoint=https://s3.example.com"]
      }

      template {
        destination = "local/pgvault/target/acme.yaml"
        data        = "name: acme\nurl: postgresql://postgres@acme-db.service.consul:5432/postgres\n"
      }

      template {
        destination = "secrets/pgvault.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/pgvault-acme" }}
          PGPASSWORD={{ .pgpassword }}
          AWS_ACCESS_KEY_ID={{ .access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .secret_access_key }}
          {{ end }}
        EOT
      }

      env {
        PGVAULT_CONFIG_DIR = "${NOMAD_TASK_DIR}/pgvault"
        AWS_DEFAULT_REGION = "us-east-1"
      }

      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
