// go-vendored prints a greeting made by a dependency vendored under vendor/; with
// -serve it answers /healthz on $PORT (default 8080) instead.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"

	"example.com/greet"
)

func main() {
	serve := flag.Bool("serve", false, "serve HTTP on $PORT")
	flag.Parse()
	if !*serve {
		fmt.Println(greet.Hello("AppC"))
		return
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
