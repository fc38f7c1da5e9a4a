from edgeslm.cli import run

run()
