package main

import (
    "context"
    "fmt"
    "log"
    
    "github.com/j1msky/sdk-go"
)

func main() {
    client := j1msky.NewClient("http://localhost:8080", "api_key")
    
    ctx := context.Background()
    
    // Spawn agent
    agent, err := client.Spawn(ctx, j1msky.SpawnRequest{
        Model:    "k2p5",
        Task:     "Write a Go function",
        Priority: "normal",
    })
    if err != nil {
        log.Fatal(err)
    }
    
    // Wait for completion
    result, err := client.WaitForCompletion(ctx, agent.ID, 300)
    if err != nil {
        log.Fatal(err)
    }
    
    fmt.Println(result.Output)
    fmt.Printf("Cost: $%.2f\n", result.Cost)
}
