#!/bin/sh
# Init a repository in /tmp, commit a file, print the log.
set -e
export GIT_AUTHOR_NAME=nvtier GIT_AUTHOR_EMAIL=nvtier@localhost
export GIT_COMMITTER_NAME=nvtier GIT_COMMITTER_EMAIL=nvtier@localhost
rm -rf /tmp/repo
git init -q /tmp/repo
cd /tmp/repo
echo hello >hello.txt
git add hello.txt
git commit -q -m "hello from git"
git log --format=%s
