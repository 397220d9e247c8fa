// mongod starts FerretDB the way the official mongo image starts MongoDB for the cupaas MongoDB add-on:
// listening on :27017, data under /data/db (the add-on's volume), and the root user of
// MONGO_INITDB_ROOT_USERNAME / MONGO_INITDB_ROOT_PASSWORD created in the `admin` database on first
// start, so the add-on's connection string (user, password, authSource=admin) works unchanged.
// FerretDB's telemetry (it reports to its vendor by default) is off.
package main

import (
	"fmt"
	"os"
	"syscall"
)

const ferretdb = "/usr/local/bin/ferretdb"

func main() {
	args := []string{
		ferretdb,
		"--handler=sqlite",
		"--sqlite-url=file:/data/db/",
		"--state-dir=/data/db",
		"--listen-addr=:27017",
		"--debug-addr=-",
		"--telemetry=disable",
		"--log-format=text",
	}
	user, password := os.Getenv("MONGO_INITDB_ROOT_USERNAME"), os.Getenv("MONGO_INITDB_ROOT_PASSWORD")
	if (user == "") != (password == "") {
		fmt.Fprintln(os.Stderr, "mongod: set both MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD, or neither")
		os.Exit(2)
	}
	env := os.Environ()
	if user != "" {
		// The password goes through the environment, not argv (which any process can read).
		args = append(args, "--test-enable-new-auth", "--setup-database=admin", "--setup-username="+user)
		env = append(env, "FERRETDB_SETUP_PASSWORD="+password)
	}
	args = append(args, os.Args[1:]...)
	if err := syscall.Exec(ferretdb, args, env); err != nil {
		fmt.Fprintf(os.Stderr, "mongod: exec %s: %v\n", ferretdb, err)
		os.Exit(1)
	}
}
