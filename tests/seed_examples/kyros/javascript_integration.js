class KyrosAPI {
    constructor(baseURL, apiKey) {
        this.baseURL = baseURL.replace(/\/$/, '');
        this.apiKey = apiKey;
        this.defaultHeaders = {
            'Authorization': `Bearer ${apiKey}`,
            'Content-Type': 'application/json'
        };
    }

    async request(endpoint, options = {}) {
        const url = `${this.baseURL}/v1${endpoint}`;
        const response = await fetch(url, {
            ...options,
            headers: {
                ...this.defaultHeaders,
                ...options.headers
            }
        });

        if (!response.ok) {
            const error = await response.json();
            throw new Error(error.error?.message || 'API request failed');
        }

        return response.json();
    }

    async createTask(taskData) {
        return this.request('/tasks', {
            method: 'POST',
            body: JSON.stringify(taskData)
        });
    }

    async getTask(taskId) {
        return this.request(`/tasks/${taskId}`);
    }

    async submitToAgent(role, taskId, context) {
        return this.request(`/agents/${role}/submit`, {
            method: 'POST',
            body: JSON.stringify({
                task_id: taskId,
                context
            })
        });
    }

    async requestEscalation(taskId, reason) {
        return this.request('/escalation/submit', {
            method: 'POST',
            body: JSON.stringify({
                task_id: taskId,
                reason
            })
        });
    }

    async getMetrics(period = '24h') {
        return this.request(`/monitoring/metrics?period=${period}`);
    }
}

// Usage example
const kyros = new KyrosAPI('https://api.kyros.com', 'your-api-key');

async function implementAuthentication() {
    try {
        // Create task
        const task = await kyros.createTask({
            title: 'Implement user authentication',
            description: 'Add JWT authentication with OAuth2',
            type: 'implementation',
            priority: 'high',
            assignee_role: 'implementer'
        });

        console.log('Task created:', task.data.id);

        // Submit to agent
        const submission = await kyros.submitToAgent(
            'implementer',
            task.data.id,
            { repository_state: 'main branch at abc123' }
        );

        console.log('Task submitted to agent');

        // Monitor progress
        const monitorProgress = async () => {
            const status = await kyros.getTask(task.data.id);
            console.log(`Task status: ${status.data.status}`);
            
            if (status.data.status === 'completed') {
                console.log('Task completed successfully!');
                return;
            } else if (status.data.status === 'failed') {
                console.error('Task failed:', status.data.error);
                return;
            }

            setTimeout(monitorProgress, 30000);
        };

        monitorProgress();

    } catch (error) {
        console.error('Error:', error.message);
    }
}

implementAuthentication();
