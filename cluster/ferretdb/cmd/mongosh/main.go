// mongosh answers the one command the cupaas MongoDB add-on's probes run,
//
//	mongosh --quiet --eval "db.adminCommand('ping').ok"
//
// by sending {ping: 1} to the server on 127.0.0.1:27017: it prints 1 and exits 0 when the server
// answers ok, and exits 1 otherwise. Any other expression is refused (exit 2): this is not a shell.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

const pingExpression = "db.adminCommand('ping').ok"

func main() {
	eval := ""
	for i := 1; i < len(os.Args); i++ {
		switch os.Args[i] {
		case "--quiet":
		case "--eval":
			if i+1 < len(os.Args) {
				i++
				eval = os.Args[i]
			}
		default:
			fmt.Fprintf(os.Stderr, "mongosh: unsupported argument %q (only --quiet --eval %q)\n", os.Args[i], pingExpression)
			os.Exit(2)
		}
	}
	if eval != pingExpression {
		fmt.Fprintf(os.Stderr, "mongosh: only --eval %q is supported\n", pingExpression)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := mongo.Connect(ctx, options.Client().ApplyURI("mongodb://127.0.0.1:27017/?directConnection=true"))
	if err == nil {
		defer client.Disconnect(context.Background()) //nolint:errcheck // exiting anyway
		var reply bson.M
		err = client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&reply)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mongosh: ping: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(1)
}
