from yktool.cli import main

main()
