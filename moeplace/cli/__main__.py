from moeplace.cli import main

main()
