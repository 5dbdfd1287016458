from spo_cli.usage import main

if __name__ == "__main__":
    main()
