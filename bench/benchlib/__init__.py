"""The benchmarks' shared machinery; bench/wal_bench.py and bench/backup_bench.py drive it.

* common   where things are (binaries, virtualenvs, results), the emulator's credentials, the
           log line, small filesystem/socket helpers
* cluster  the OS user everything runs as (run, fork+exec, chown) and a PostgreSQL server on
           its own socket (start, psql, archive_command switches, watching its start in the log)
* datasets what the tools are fed, cached under the workdir: the WAL corpus and the stopped
           clusters the base backups are taken of
* stack    moto S3 behind a stunnel TLS front (through localstack/stack.py when it works)
* measure  kernel CPU accounting (/proc, wait4, the child subreaper), RSS sampling, the quiet
           wait, one timed command, py-spy stacks, the results JSON
* tools    the tools under test, one adapter each: cloudbm, pgBackRest, barman-cloud, the floor
* report   the markdown tables of both benchmarks (from their results JSON)

The drivers are scripts, so their own directory (bench/) is on sys.path and ``import benchlib``
finds this package from any working directory.
"""
