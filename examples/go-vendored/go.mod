module example.com/go-vendored

go 1.19

require example.com/greet v1.0.0
