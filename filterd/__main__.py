from filterd.cli import main
import sys
sys.exit(main())
