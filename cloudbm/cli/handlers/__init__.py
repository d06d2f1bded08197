"""One handler per command, one module per group: read the parsed arguments, call the command
in cloudbm.commands (imported only inside the handler, so a process loads just the command it
runs), and hand its result to the command's output function in cloudbm.cli.output. A handler
returns the exit status; errors propagate to cloudbm.cli.main, which maps them to statuses."""
