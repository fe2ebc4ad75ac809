from hydralign.cli import main

main()
