module github.com/j1msky/sdk-go

go 1.19
