from p2pdma.cli.main import entry

entry()
