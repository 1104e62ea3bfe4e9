from ultragen.cli import main

main()
