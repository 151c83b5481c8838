// Package greet is a tiny dependency kept under vendor/, so the example builds offline.
package greet

// Hello greets who.
func Hello(who string) string {
	return "Hello, " + who + ", from a vendored module"
}
