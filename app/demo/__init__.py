"""`snapsync demo` (the command is in app/cli.py): `tour` runs it, `saved` resumes the simulator
of the previous demo, `dashboard` shows the live progress, `report` reads and prints the closing
report, `explore` opens psql on the data afterwards."""
