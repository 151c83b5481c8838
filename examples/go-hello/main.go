// go-hello is a tiny HTTP service: it listens on $PORT (default 8080), answers /healthz
// with "ok" and every other path with a greeting.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from go-hello, path %s\n", r.URL.Path)
	})
	addr := ":" + port
	log.Printf("go-hello listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
