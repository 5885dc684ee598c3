# A dozen stdlib imports (the same set as bench-common.sh's app), then hello.
import json, email.parser, http.client, sqlite3, asyncio, decimal, argparse, logging, xml.dom.minidom, csv, unittest, urllib.request
print("hello from python")
